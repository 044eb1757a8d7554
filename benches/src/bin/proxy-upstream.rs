//! The app behind the proxy in `benches/proxy.sh`: plaintext HTTP/1.1 on
//! localhost (as an app in a pod listens), answering every request with a
//! fixed 13-byte body after reading its request body. `proxy-load` hits it
//! directly (the baseline) and through `tollgate-proxy` in the same run.
//!
//! ```text
//! proxy-upstream --listen 127.0.0.1:8080
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "proxy-upstream",
    about = "A fixed-answer HTTP app for the proxy benchmark"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    Ok(Response::new(Full::new(Bytes::from_static(
        b"hello, proxy\n",
    ))))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the app is not what is measured.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(cli.listen).await?;
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    })
}
