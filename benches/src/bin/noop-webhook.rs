//! The baseline for `benches/webhook.sh`: an HTTPS server on the same TLS
//! and HTTP stack as `tollgate serve` (tollgate-certs' rustls config →
//! tokio-rustls → hyper-util's auto HTTP/1 + h2 builder, on a multi-thread
//! tokio runtime) that reads the whole body of any POST and answers a fixed
//! allowing AdmissionReview. Whatever tollgate costs beyond this is the
//! webhook's own work: routing, decoding, policies, encoding, metrics.
//!
//! ```text
//! noop-webhook --listen 127.0.0.1:9443 --cert tls.crt --key tls.key
//! noop-webhook ... --echo-uid   # answer with the request's uid, as kube-apiserver requires
//! noop-webhook certs --dir DIR     # writes ca.pem, tls.crt, tls.key for 127.0.0.1/localhost
//! ```

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The same bounds `tollgate serve` puts on handshakes and request heads.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const ALLOW: &[u8] =
    br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}"#;

#[derive(Parser)]
#[command(
    name = "noop-webhook",
    about = "A no-op HTTPS admission webhook: the baseline tollgate is measured against",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM).
    #[arg(long, required = true)]
    cert: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, required = true)]
    key: Option<PathBuf>,
    /// Answer with the request's `uid` (the first `"uid"` of the body, which
    /// is `request.uid` in the apiserver's encoding), as kube-apiserver
    /// requires; without it the answer is fixed (uid "x") and the body is
    /// only read, not scanned.
    #[arg(long)]
    echo_uid: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a throwaway CA (ca.pem) and a serving certificate for
    /// localhost and 127.0.0.1 (tls.crt, tls.key) into DIR.
    Certs {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Certs { dir }) => write_certs(&dir),
        None => {
            let (cert, key) = cli
                .cert
                .zip(cli.key)
                .context("--cert and --key are required")?;
            let tls = tollgate_certs::tls::server_config_from_files(&cert, &key)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cli.listen, tls, cli.echo_uid))
        }
    }
}

fn write_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = tollgate_certs::issue::Ca::generate("tollgate bench CA")?;
    let leaf = ca.issue_server(
        &["localhost".to_owned()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )?;
    for (name, text) in [
        ("ca.pem", ca.cert_pem()),
        ("tls.crt", leaf.cert_pem.as_str()),
        ("tls.key", leaf.key_pem.as_str()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn serve(
    listen: SocketAddr,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    echo_uid: bool,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "noop-webhook: serving on https://{}",
        listener.local_addr()?
    );
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("noop-webhook: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As `tollgate serve` does: no Nagle delay on small writes (an h2
        // response's frames), which a client's delayed ACK turns into 40 ms.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |r| answer(r, echo_uid));
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    echo_uid: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(response(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()));
    }
    // Read the whole body, as a webhook must before it can decide.
    match request.into_body().collect().await {
        Ok(body) if echo_uid => {
            let body = body.to_bytes();
            let uid = first_uid(&body).unwrap_or(b"x");
            let mut answer = Vec::with_capacity(ALLOW.len() + uid.len());
            let (head, tail) = ALLOW.split_at(ALLOW.len() - br#"x","allowed":true}}"#.len());
            answer.extend_from_slice(head);
            answer.extend_from_slice(uid);
            answer.extend_from_slice(&tail[1..]);
            Ok(response(StatusCode::OK, Bytes::from(answer)))
        }
        Ok(_) => Ok(response(StatusCode::OK, Bytes::from_static(ALLOW))),
        Err(_) => Ok(response(StatusCode::BAD_REQUEST, Bytes::new())),
    }
}

/// The value of the first `"uid"` key in `body` (no JSON parse: a scan), if
/// it is a plain string.
fn first_uid(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"uid\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &body[at..];
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then(|| &rest[..end])
}

fn response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_request_uid() {
        let review = br#"{"kind":"AdmissionReview","request":{"uid":"705ab4f5-6393","kind":{},"userInfo":{"uid":"u"}}}"#;
        assert_eq!(first_uid(review), Some(&b"705ab4f5-6393"[..]));
        assert_eq!(first_uid(br#"{"uid" : "a b"}"#), Some(&b"a b"[..]));
        assert_eq!(first_uid(br#"{"uid":"a\"b"}"#), None);
        assert_eq!(first_uid(br#"{"uid":1}"#), None);
        assert_eq!(first_uid(b"{}"), None);
    }
}
