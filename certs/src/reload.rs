//! A TLS identity that can be replaced while servers run.
//!
//! An [`IdentityStore`] holds the current certificate chain, key and trust
//! bundle behind an atomic pointer. The rustls configurations built from it
//! ([`IdentityStore::server_config`], [`IdentityStore::client_config`]) look
//! the identity up on every handshake, so a replacement is seen by the next
//! connection while connections already established carry on with the one
//! they negotiated. A replacement that does not parse, or whose key does not
//! match its certificate, is refused and the previous identity kept.
//!
//! [`watch_files`] replaces the identity when mounted files change (a
//! Secret volume or cert-manager); the webhook replaces it from the Secret
//! it manages.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::Error;
use crate::inspect::{CertInfo, inspect_der};
use crate::metrics::CertMetrics;
use crate::spiffe::{IdPattern, peer_id};
use crate::tls::{ALPN, parse_chain};

/// PEM text of one identity: a chain (leaf first), its key, and the CAs
/// whose certificates peers must present (for mTLS), if any.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: Option<String>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(String::len))
            .finish()
    }
}

/// One parsed, checked identity.
pub struct Identity {
    certified: Arc<CertifiedKey>,
    /// The leaf certificate, read back.
    pub leaf: CertInfo,
    /// The trust bundle, as given.
    pub ca_pem: Option<String>,
    roots: Option<Arc<RootCertStore>>,
    required: Option<Arc<dyn ClientCertVerifier>>,
    optional: Option<Arc<dyn ClientCertVerifier>>,
}

impl Identity {
    /// Parses and checks `material`; `source` names it in errors.
    pub fn load(
        material: &Material,
        source: &str,
        provider: &CryptoProvider,
    ) -> Result<Identity, Error> {
        let path = Path::new(source);
        Identity::load_from(material, [path, path, path], provider)
    }

    /// Like [`Identity::load`], naming the certificate, key and CA files
    /// the material was read from in errors.
    fn load_from(
        material: &Material,
        [cert_path, key_path, ca_path]: [&Path; 3],
        provider: &CryptoProvider,
    ) -> Result<Identity, Error> {
        let chain = parse_chain(&material.cert_pem, cert_path)?;
        let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).map_err(|source| {
            Error::Pem {
                path: key_path.to_owned(),
                source,
            }
        })?;
        let identity_error = |source| Error::Identity {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        };
        let leaf = inspect_der(&chain[0])?;
        let certified = CertifiedKey::from_der(chain, key, provider).map_err(identity_error)?;
        let mut identity = Identity {
            certified: Arc::new(certified),
            leaf,
            ca_pem: material.ca_pem.clone(),
            roots: None,
            required: None,
            optional: None,
        };
        if let Some(ca_pem) = &material.ca_pem {
            let mut roots = RootCertStore::empty();
            for ca in parse_chain(ca_pem, ca_path)? {
                roots.add(ca).map_err(|source| Error::Identity {
                    cert: ca_path.to_owned(),
                    key: key_path.to_owned(),
                    source,
                })?;
            }
            let roots = Arc::new(roots);
            let provider = Arc::new(provider.clone());
            let build = |optional: bool| {
                let builder =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
                let builder = if optional {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                builder
                    .build()
                    .map_err(|e| identity_error(rustls::Error::General(e.to_string())))
            };
            identity.required = Some(build(false)?);
            identity.optional = Some(build(true)?);
            identity.roots = Some(roots);
        }
        Ok(identity)
    }
}

/// Whether a server asks connecting clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates (browser traffic from an ingress).
    Off,
    /// Verified when presented; clients without one are let through.
    Optional,
    /// mTLS: a client without a valid certificate is refused in the handshake.
    Required,
}

/// Which server a client connection expects on the other end.
#[derive(Debug, Clone)]
pub enum ExpectedServer {
    /// The server's certificate must name the host connected to (DNS or IP).
    Name,
    /// The server's SPIFFE ID must match one of these.
    Spiffe(Vec<IdPattern>),
}

/// The current identity, replaceable at any time.
pub struct IdentityStore {
    current: ArcSwap<Identity>,
    provider: Arc<CryptoProvider>,
    label: String,
    metrics: Option<CertMetrics>,
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl IdentityStore {
    /// A store holding `material`; `label` names the certificate in logs and
    /// in the `cert` label of the expiry metric.
    pub fn new(material: &Material, label: &str) -> Result<Arc<IdentityStore>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = Identity::load(material, label, &provider)?;
        Ok(Arc::new(IdentityStore {
            current: ArcSwap::from_pointee(identity),
            provider,
            label: label.to_owned(),
            metrics: None,
        }))
    }

    /// Like [`IdentityStore::new`], reporting expiry and rotations to `metrics`.
    pub fn with_metrics(
        material: &Material,
        label: &str,
        metrics: CertMetrics,
    ) -> Result<Arc<IdentityStore>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = Identity::load(material, label, &provider)?;
        metrics.observe(label, &identity);
        Ok(Arc::new(IdentityStore {
            current: ArcSwap::from_pointee(identity),
            provider,
            label: label.to_owned(),
            metrics: Some(metrics),
        }))
    }

    /// Swaps in `material` for new connections. On error the current
    /// identity stays and the failure is counted.
    pub fn replace(&self, material: &Material) -> Result<(), Error> {
        let label = Path::new(&self.label);
        self.replace_from(material, [label, label, label])
    }

    /// Like [`IdentityStore::replace`] for material read from `files`,
    /// whose errors name the file at fault.
    pub fn replace_from_files(&self, material: &Material, files: &Files) -> Result<(), Error> {
        let ca = files.ca.as_deref().unwrap_or(&files.cert);
        self.replace_from(material, [&files.cert, &files.key, ca])
    }

    fn replace_from(&self, material: &Material, paths: [&Path; 3]) -> Result<(), Error> {
        match Identity::load_from(material, paths, &self.provider) {
            Ok(identity) => {
                if let Some(metrics) = &self.metrics {
                    metrics.observe(&self.label, &identity);
                    metrics.rotated();
                }
                tracing::info!(
                    cert = %self.label,
                    subject = %identity.leaf.subject,
                    not_after = %identity.leaf.not_after,
                    "certificate replaced"
                );
                self.current.store(Arc::new(identity));
                Ok(())
            }
            Err(e) => {
                if let Some(metrics) = &self.metrics {
                    metrics.failed();
                }
                Err(e)
            }
        }
    }

    /// The identity new connections get.
    pub fn current(&self) -> Arc<Identity> {
        self.current.load_full()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// A server configuration (ALPN h2, http/1.1) that serves the current
    /// certificate and checks client certificates as `client_auth` says.
    pub fn server_config(
        self: &Arc<Self>,
        client_auth: ClientAuth,
    ) -> Result<Arc<ServerConfig>, Error> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?;
        let builder = match client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            mode => builder.with_client_cert_verifier(Arc::new(CurrentClientVerifier {
                store: self.clone(),
                required: mode == ClientAuth::Required,
            })),
        };
        let mut config = builder.with_cert_resolver(Arc::new(CurrentCert(self.clone())));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A client configuration that presents the current certificate and
    /// verifies servers against the current trust bundle as `expected` says.
    /// ALPN is left to the caller.
    pub fn client_config(
        self: &Arc<Self>,
        expected: ExpectedServer,
    ) -> Result<ClientConfig, Error> {
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CurrentServerVerifier {
                store: self.clone(),
                expected,
            }))
            .with_client_cert_resolver(Arc::new(CurrentCert(self.clone())));
        Ok(config)
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

/// Resolves to whatever certificate the store holds now.
#[derive(Debug)]
struct CurrentCert(Arc<IdentityStore>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().certified.clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client certificates against the current trust bundle.
#[derive(Debug)]
struct CurrentClientVerifier {
    store: Arc<IdentityStore>,
    required: bool,
}

impl ClientCertVerifier for CurrentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional, and the bundle may change under us.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = self.store.current.load();
        let verifier = if self.required {
            &identity.required
        } else {
            &identity.optional
        };
        match verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(format!(
                "{}: no trust bundle (ca.crt) to verify client certificates with",
                self.store.label
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.store.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.store.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store.algorithms().supported_schemes()
    }
}

/// Verifies servers against the current trust bundle, by name or SPIFFE ID.
#[derive(Debug)]
struct CurrentServerVerifier {
    store: Arc<IdentityStore>,
    expected: ExpectedServer,
}

impl ServerCertVerifier for CurrentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = self.store.current.load();
        let Some(roots) = &identity.roots else {
            return Err(rustls::Error::General(format!(
                "{}: no trust bundle (ca.crt) to verify servers with",
                self.store.label
            )));
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.store.algorithms().all,
        )?;
        match &self.expected {
            ExpectedServer::Name => rustls::client::verify_server_name(&cert, server_name)?,
            ExpectedServer::Spiffe(patterns) => {
                let id = peer_id(end_entity).ok_or_else(|| {
                    rustls::Error::General("server certificate has no SPIFFE ID".into())
                })?;
                if !patterns.iter().any(|p| p.matches(&id)) {
                    return Err(rustls::Error::General(format!(
                        "server SPIFFE ID {id} is not among the expected ones"
                    )));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.store.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.store.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store.algorithms().supported_schemes()
    }
}

/// Where a mounted identity lives: `tls.crt`, `tls.key` and optionally
/// `ca.crt`, as a Kubernetes TLS Secret or cert-manager mounts them.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl Files {
    /// `tls.crt`, `tls.key` and `ca.crt` in `dir`.
    pub fn in_dir(dir: &Path) -> Files {
        Files {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: Some(dir.join("ca.crt")),
        }
    }

    /// Reads the files as they are now.
    pub fn read(&self) -> Result<Material, Error> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Material {
            cert_pem: read(&self.cert)?,
            key_pem: read(&self.key)?,
            ca_pem: self.ca.as_deref().map(read).transpose()?,
        })
    }
}

/// Polls `files` every `interval` and replaces the store's identity when
/// their content changes. Polling (rather than inotify) sees a Secret
/// volume's symlink swap and a cert-manager rewrite alike. A change that
/// does not load (a half-written pair, say) is logged and retried at the
/// next poll; the previous identity keeps serving. Runs until dropped.
///
/// The files are read as the baseline when this is called, not when the
/// returned future first runs: a change landing before the task was first
/// polled would otherwise become the baseline and never be loaded (the
/// "garbage is refused" test passed that way without the watcher ever
/// looking at the garbage).
pub fn watch_files(
    store: Arc<IdentityStore>,
    files: Files,
    interval: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let last = files.read().ok();
    watch_from(store, files, interval, last)
}

async fn watch_from(
    store: Arc<IdentityStore>,
    files: Files,
    interval: Duration,
    mut last: Option<Material>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let material = match files.read() {
            Ok(m) => m,
            Err(e) => {
                if let Some(metrics) = &store.metrics {
                    metrics.failed();
                }
                tracing::warn!(cert = %store.label, error = %e, "certificate files unreadable; keeping the current certificate");
                continue;
            }
        };
        if last.as_ref() == Some(&material) {
            continue;
        }
        match store.replace_from_files(&material, &files) {
            Ok(()) => last = Some(material),
            Err(e) => {
                tracing::warn!(cert = %store.label, error = %e, "new certificate files refused; keeping the current certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::issue::{Ca, LeafSpec, spiffe_id};

    fn material(ca: &Ca, spec: &LeafSpec) -> Material {
        let leaf = ca.issue(spec).unwrap();
        Material {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            ca_pem: Some(ca.cert_pem().to_owned()),
        }
    }

    /// Serves one TLS connection on a thread; returns the address.
    fn serve_once(
        config: Arc<ServerConfig>,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<Result<(), String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().map_err(|e| e.to_string())?;
            let mut conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
            tls.write_all(&buf).map_err(|e| e.to_string())?;
            Ok(())
        });
        (addr, handle)
    }

    /// Connects, exchanges four bytes, and returns the server's leaf.
    fn connect(
        config: ClientConfig,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> Result<CertificateDer<'static>, String> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(conn.peer_certificates().unwrap()[0].clone().into_owned())
    }

    #[test]
    fn new_handshakes_see_the_replacement() {
        let ca = Ca::generate("CA").unwrap();
        let first = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        let server = IdentityStore::new(&first, "test").unwrap();
        let client = IdentityStore::new(
            &material(&ca, &LeafSpec::workload("spiffe://t/ns/a/sa/b", &[])),
            "client",
        )
        .unwrap();

        let (addr, h) = serve_once(server.server_config(ClientAuth::Off).unwrap());
        let seen = connect(
            client.client_config(ExpectedServer::Name).unwrap(),
            addr,
            "localhost",
        )
        .unwrap();
        h.join().unwrap().unwrap();
        assert_eq!(
            crate::inspect::inspect_der(&seen).unwrap(),
            server.current().leaf
        );

        let second = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        server.replace(&second).unwrap();
        let (addr, h) = serve_once(server.server_config(ClientAuth::Off).unwrap());
        let seen2 = connect(
            client.client_config(ExpectedServer::Name).unwrap(),
            addr,
            "localhost",
        )
        .unwrap();
        h.join().unwrap().unwrap();
        assert_ne!(seen, seen2);
        assert_eq!(
            crate::inspect::inspect_der(&seen2).unwrap(),
            server.current().leaf
        );
    }

    #[test]
    fn a_bad_replacement_keeps_the_current_identity() {
        let ca = Ca::generate("CA").unwrap();
        let first = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        let store = IdentityStore::new(&first, "test").unwrap();
        let before = store.current().leaf.clone();
        let other = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        let mismatched = Material {
            key_pem: other.key_pem,
            ..first.clone()
        };
        let err = store.replace(&mismatched).unwrap_err().to_string();
        assert!(err.contains("test"), "{err}");
        assert!(
            store
                .replace(&Material {
                    cert_pem: "junk".into(),
                    ..first
                })
                .is_err()
        );
        assert_eq!(store.current().leaf, before);
    }

    #[test]
    fn a_refused_file_replacement_names_the_file_at_fault() {
        let ca = Ca::generate("CA").unwrap();
        let good = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        let other = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        let files = Files::in_dir(Path::new("/etc/certs"));
        let store = IdentityStore::new(&good, "workload").unwrap();
        let refused = |m: Material| {
            store
                .replace_from_files(&m, &files)
                .unwrap_err()
                .to_string()
        };

        let err = refused(Material {
            cert_pem: "garbage".into(),
            ..good.clone()
        });
        assert_eq!(err, "/etc/certs/tls.crt: contains no certificate");
        let half = &good.key_pem[..good.key_pem.len() / 2];
        let err = refused(Material {
            key_pem: half.into(),
            ..good.clone()
        });
        assert!(
            err.starts_with("/etc/certs/tls.key: not valid PEM"),
            "{err}"
        );
        let err = refused(Material {
            key_pem: other.key_pem.clone(),
            ..good.clone()
        });
        assert!(
            err.starts_with(
                "certificate /etc/certs/tls.crt and key /etc/certs/tls.key do not form a usable TLS identity"
            ),
            "{err}"
        );
        let err = refused(Material {
            ca_pem: Some("junk".into()),
            ..good.clone()
        });
        assert_eq!(err, "/etc/certs/ca.crt: contains no certificate");
        assert_eq!(
            store.current().leaf,
            inspect_der(&good_leaf(&good)).unwrap()
        );
    }

    fn good_leaf(m: &Material) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(m.cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn mtls_requires_a_client_certificate_from_the_bundle_and_checks_spiffe_ids() {
        let ca = Ca::generate("mesh").unwrap();
        let server_id = spiffe_id("cluster.local", "flyte", "flyteadmin");
        let server = IdentityStore::new(
            &material(&ca, &LeafSpec::workload(&server_id, &[])),
            "server",
        )
        .unwrap();
        let client = IdentityStore::new(
            &material(
                &ca,
                &LeafSpec::workload("spiffe://cluster.local/ns/ws/sa/me", &[]),
            ),
            "client",
        )
        .unwrap();
        let allowed = ExpectedServer::Spiffe(vec![
            IdPattern::parse("spiffe://cluster.local/ns/flyte/sa/*").unwrap(),
        ]);

        let (addr, h) = serve_once(server.server_config(ClientAuth::Required).unwrap());
        connect(
            client.client_config(allowed.clone()).unwrap(),
            addr,
            "flyteadmin",
        )
        .unwrap();
        h.join().unwrap().unwrap();

        // The wrong SPIFFE ID expected: the client refuses the server.
        let (addr, h) = serve_once(server.server_config(ClientAuth::Required).unwrap());
        let wrong = ExpectedServer::Spiffe(vec![
            IdPattern::parse("spiffe://cluster.local/ns/other/sa/*").unwrap(),
        ]);
        let err = connect(client.client_config(wrong).unwrap(), addr, "flyteadmin").unwrap_err();
        assert!(err.contains("not among the expected"), "{err}");
        let _ = h.join();

        // A client certificate from another CA: the server refuses it.
        let stranger_ca = Ca::generate("stranger").unwrap();
        let stranger = IdentityStore::new(
            &Material {
                ca_pem: Some(ca.cert_pem().to_owned()),
                ..material(
                    &stranger_ca,
                    &LeafSpec::workload("spiffe://x/ns/a/sa/b", &[]),
                )
            },
            "stranger",
        )
        .unwrap();
        let (addr, h) = serve_once(server.server_config(ClientAuth::Required).unwrap());
        assert!(connect(stranger.client_config(allowed).unwrap(), addr, "flyteadmin").is_err());
        assert!(h.join().unwrap().is_err());
    }

    #[tokio::test]
    async fn watch_files_swaps_on_change_and_ignores_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("CA").unwrap();
        let write = |m: &Material| {
            std::fs::write(dir.path().join("tls.crt"), &m.cert_pem).unwrap();
            std::fs::write(dir.path().join("tls.key"), &m.key_pem).unwrap();
            std::fs::write(dir.path().join("ca.crt"), m.ca_pem.as_deref().unwrap()).unwrap();
        };
        let first = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        write(&first);
        let files = Files::in_dir(dir.path());
        let metrics = CertMetrics::default();
        let store =
            IdentityStore::with_metrics(&files.read().unwrap(), "files", metrics.clone()).unwrap();
        let task = tokio::spawn(watch_files(store.clone(), files, Duration::from_millis(20)));
        let before = store.current().leaf.clone();

        // Wait for the watcher to have seen the garbage and refused it (a
        // counted failure), not for a while: after a sleep, an unchanged
        // certificate may only mean the watcher has not looked yet.
        std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.failures() == 0 {
            assert!(std::time::Instant::now() < deadline, "garbage never read");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.current().leaf, before, "garbage is refused");

        let second = material(&ca, &LeafSpec::server(&["localhost".into()], &[]));
        write(&second);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.current().leaf == before {
            assert!(std::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            store.current().leaf,
            crate::inspect::inspect_pem(&second.cert_pem).unwrap()
        );
        task.abort();
    }
}
