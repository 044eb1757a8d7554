//! The client side of the load generators: a target URL resolved once, a
//! TLS client configuration from PEM files (ring, TLS 1.3 and 1.2 as
//! rustls' safe defaults), and connections (TCP_NODELAY, TLS, then an
//! HTTP/1.1 or h2 handshake whose connection task runs on its own). Also the
//! benchmark certificates that `proxy-load certs` writes.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tollgate_certs::issue::{Ca, LeafSpec};

/// The request body type of every generator.
pub type Body = Full<Bytes>;

/// A TLS client configuration: servers are verified against the CA
/// certificates in `ca` (PEM) by the name or IP in the URL; `identity`
/// (certificate chain, key; PEM) is presented when the server asks. ALPN
/// offers only `h2` or only `http/1.1`, so the server cannot pick the other.
pub fn tls_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    http2: bool,
) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots
            .add(cert.with_context(|| format!("{}", ca.display()))?)
            .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("{}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(config)
}

/// Where requests go: the URL's address resolved once (IPv4 first), its
/// authority for `Host`/`:authority`, and TLS for `https`.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host[:port]` as the URL has it.
    pub authority: String,
    /// Path and query, `/` when the URL has none.
    pub path: String,
    /// The absolute URL (h2 requests carry it as `:scheme`/`:authority`).
    pub url: Uri,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A connection's request sender, HTTP/1.1 or h2.
pub enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// A new connection and, over TLS, what was negotiated
/// (`TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 alpn=h2`).
pub struct Connection {
    pub sender: Sender,
    pub tls: Option<String>,
}

impl Target {
    /// `tls` is required for `https` URLs and refused for `http` ones.
    pub fn new(url: &Uri, tls: Option<ClientConfig>) -> anyhow::Result<Target> {
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("{url}: the URL must start with http:// or https://"),
        };
        let host = url.host().context("the URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .with_context(|| format!("{host} resolves to no address"))?;
        let tls = match (https, tls) {
            (true, Some(config)) => Some((
                TlsConnector::from(Arc::new(config)),
                ServerName::try_from(host.to_owned())?,
            )),
            (true, None) => bail!("an https URL needs the CA that signed the server's certificate"),
            (false, Some(_)) => bail!("TLS options given for an http:// URL"),
            (false, None) => None,
        };
        let authority = url.authority().context("the URL has no host")?.to_string();
        let path = url
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        Ok(Target {
            addr,
            authority,
            path,
            url: url.clone(),
            tls,
        })
    }

    /// TCP (no Nagle), then TLS if https, then the HTTP handshake: HTTP/1.1,
    /// or h2 (prior knowledge over plaintext, ALPN `h2` over TLS).
    pub async fn connect(&self, http2: bool) -> anyhow::Result<Connection> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Connection {
                sender: handshake(TokioIo::new(tcp), http2).await?,
                tls: None,
            }),
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake")?;
                let conn = stream.get_ref().1;
                let alpn = conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                if http2 && alpn.as_deref() != Some("h2") {
                    bail!("the server did not accept h2 (ALPN: {alpn:?})");
                }
                let tls = format!(
                    "{:?} {:?} {:?} alpn={}",
                    conn.protocol_version().context("no TLS version")?,
                    conn.negotiated_cipher_suite()
                        .context("no cipher suite")?
                        .suite(),
                    conn.negotiated_key_exchange_group()
                        .map(|g| g.name())
                        .context("no key exchange group")?,
                    alpn.as_deref().unwrap_or("-"),
                );
                Ok(Connection {
                    sender: handshake(TokioIo::new(stream), http2).await?,
                    tls: Some(tls),
                })
            }
        }
    }
}

async fn handshake<I>(io: I, http2: bool) -> anyhow::Result<Sender>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if http2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .context("h2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::Http2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::Http1(sender))
    }
}

/// Writes a CA and two workload certificates for `localhost` and
/// 127.0.0.1: `dir/proxy` (the server's, and its client identity) and
/// `dir/client` (the load generator's), each as `tls.crt`, `tls.key` and
/// `ca.crt`.
pub fn write_certs(dir: &Path) -> anyhow::Result<()> {
    let ca = Ca::generate("proxy bench CA")?;
    for (name, id) in [
        ("proxy", "spiffe://cluster.local/ns/bench/sa/proxy"),
        ("client", "spiffe://cluster.local/ns/bench/sa/client"),
    ] {
        let mut spec = LeafSpec::workload(id, &["localhost".to_owned()]);
        spec.ips = vec![Ipv4Addr::LOCALHOST.into()];
        let leaf = ca.issue(&spec)?;
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("tls.crt"), leaf.cert_pem)?;
        std::fs::write(d.join("tls.key"), leaf.key_pem)?;
        std::fs::write(d.join("ca.crt"), ca.cert_pem())?;
    }
    Ok(())
}
