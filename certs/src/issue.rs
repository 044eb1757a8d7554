//! Issuing a CA and the leaf certificates it signs: serving certificates
//! for the webhook, and workload certificates (SPIFFE URI SAN) for proxies.

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

/// How far certificates are back-dated, so that clocks lagging behind the
/// issuer's still accept them.
const BACKDATE: Duration = Duration::minutes(5);

/// A certificate authority (ECDSA P-256) that can sign leaf certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A signed leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf certificate is for and whom it names.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// DNS subject alternative names; the first is also the common name.
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// A SPIFFE ID (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) as URI SAN.
    pub spiffe_id: Option<String>,
    pub lifetime: Duration,
    /// Server authentication; workload certificates are client certificates
    /// as well, for mTLS in both directions.
    pub client_auth: bool,
    /// When the lifetime starts; `None`: now.
    pub issued_at: Option<OffsetDateTime>,
}

impl LeafSpec {
    /// A serving certificate for these names, valid for a year.
    pub fn server(dns_names: &[String], ips: &[IpAddr]) -> LeafSpec {
        LeafSpec {
            dns_names: dns_names.to_vec(),
            ips: ips.to_vec(),
            spiffe_id: None,
            lifetime: LEAF_LIFETIME,
            client_auth: false,
            issued_at: None,
        }
    }

    /// A workload certificate carrying `spiffe_id`, for mTLS both ways.
    pub fn workload(spiffe_id: &str, dns_names: &[String]) -> LeafSpec {
        LeafSpec {
            dns_names: dns_names.to_vec(),
            ips: Vec::new(),
            spiffe_id: Some(spiffe_id.to_owned()),
            lifetime: LEAF_LIFETIME,
            client_auth: true,
            issued_at: None,
        }
    }

    pub fn with_lifetime(mut self, lifetime: Duration) -> LeafSpec {
        self.lifetime = lifetime;
        self
    }

    /// Starts the lifetime at `at` rather than now.
    pub fn issued_at(mut self, at: OffsetDateTime) -> LeafSpec {
        self.issued_at = Some(at);
        self
    }
}

/// The DNS names a Service answers to inside the cluster.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The SPIFFE ID of a Kubernetes service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

impl Ca {
    /// Generates a new self-signed CA named `common_name`, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Ca, Error> {
        Ca::generate_with_lifetime(common_name, CA_LIFETIME)
    }

    /// Generates a new self-signed CA valid for `lifetime`.
    pub fn generate_with_lifetime(common_name: &str, lifetime: Duration) -> Result<Ca, Error> {
        Ca::generate_at(common_name, lifetime, OffsetDateTime::now_utc())
    }

    /// Generates a new self-signed CA valid for `lifetime` from `at`.
    pub fn generate_at(
        common_name: &str,
        lifetime: Duration,
        at: OffsetDateTime,
    ) -> Result<Ca, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, lifetime, at);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA stored earlier (a Secret's `ca.crt` and `ca.key`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM: what clients trust (a webhook's `caBundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM, for storing it beside the certificate.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, dns_names: &[String], ips: &[IpAddr]) -> Result<Leaf, Error> {
        self.issue(&LeafSpec::server(dns_names, ips))
    }

    /// Issues a leaf certificate as `spec` describes, with a new key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let common_name = spec
            .dns_names
            .first()
            .or(spec.spiffe_id.as_ref())
            .map_or("tollgate", String::as_str);
        params.distinguished_name = name(common_name);
        let dns = spec
            .dns_names
            .iter()
            .map(|d| Ok(SanType::DnsName(d.clone().try_into()?)));
        let ips = spec.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip)));
        let uris = spec
            .spiffe_id
            .iter()
            .map(|id| Ok(SanType::URI(id.clone().try_into()?)));
        params.subject_alt_names = dns
            .chain(ips)
            .chain(uris)
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if spec.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        validity(
            &mut params,
            spec.lifetime,
            spec.issued_at.unwrap_or_else(OffsetDateTime::now_utc),
        );
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

fn validity(params: &mut CertificateParams, lifetime: Duration, at: OffsetDateTime) {
    // Short-lived test certificates are back-dated by less than they live.
    params.not_before = at - BACKDATE.min(lifetime / 2);
    params.not_after = at + lifetime;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{RootCertStore, client::WebPkiServerVerifier, server::WebPkiClientVerifier};
    use rustls_pki_types::pem::PemObject;

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify_server(ca: &Ca, leaf: &Leaf, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        verifier
            .verify_server_cert(
                &der(&leaf.cert_pem),
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn server_certificates_verify_with_webpki_for_their_names_only() {
        let ca = Ca::generate("test CA").unwrap();
        let names = service_dns_names("tollgate-webhook", "tollgate-system");
        let leaf = ca
            .issue_server(&names, &["127.0.0.1".parse().unwrap()])
            .unwrap();
        verify_server(&ca, &leaf, "tollgate-webhook.tollgate-system.svc").unwrap();
        verify_server(
            &ca,
            &leaf,
            "tollgate-webhook.tollgate-system.svc.cluster.local",
        )
        .unwrap();
        verify_server(&ca, &leaf, "127.0.0.1").unwrap();
        assert!(verify_server(&ca, &leaf, "other.tollgate-system.svc").is_err());
        crate::tls::server_config_from_pem(&leaf.cert_pem, &leaf.key_pem, "test").unwrap();
    }

    #[test]
    fn a_certificate_from_another_ca_does_not_verify() {
        let ca = Ca::generate("test CA").unwrap();
        let other = Ca::generate("other CA").unwrap();
        let leaf = other.issue_server(&["localhost".into()], &[]).unwrap();
        assert!(verify_server(&ca, &leaf, "localhost").is_err());
    }

    #[test]
    fn workload_certificates_carry_the_spiffe_id_and_verify_as_clients() {
        let ca = Ca::generate("mesh CA").unwrap();
        let id = spiffe_id("cluster.local", "flyte", "flyteadmin");
        assert_eq!(id, "spiffe://cluster.local/ns/flyte/sa/flyteadmin");
        let leaf = ca.issue(&LeafSpec::workload(&id, &[])).unwrap();
        let info = crate::inspect::inspect_pem(&leaf.cert_pem).unwrap();
        assert_eq!(info.uris, vec![id.clone()]);
        assert_eq!(crate::spiffe::peer_id(&der(&leaf.cert_pem)), Some(id));
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&der(&leaf.cert_pem), &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn a_stored_ca_signs_leaves_that_chain_to_it() {
        let ca = Ca::generate("stored CA").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let leaf = again.issue_server(&["localhost".into()], &[]).unwrap();
        verify_server(&ca, &leaf, "localhost").unwrap();
        assert!(Ca::from_pem(ca.cert_pem(), "not a key").is_err());
    }
}
