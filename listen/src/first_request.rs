//! The first-request deadline: a connection that has not delivered a
//! request head by a deadline is closed.
//!
//! ```text
//! let (service, served) = first_request::noting(service);
//! let connection = builder.serve_connection(io, service);
//! first_request::finish_or_cut(connection, served, deadline, peer).await;
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `service`, and a flag it sets when a request reaches it.
pub fn noting<S>(service: S) -> (Noting<S>, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(false));
    let service = Noting {
        inner: service,
        flag: flag.clone(),
    };
    (service, flag)
}

/// A hyper service that notes that a request reached it.
#[derive(Clone)]
pub struct Noting<S> {
    inner: S,
    flag: Arc<AtomicBool>,
}

impl<S: hyper::service::Service<R>, R> hyper::service::Service<R> for Noting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> Self::Future {
        self.flag.store(true, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Runs `connection` to its end, or drops (closes) it if no request has
/// reached the service within `deadline`. The reason a connection ended
/// is logged at debug, with `peer`.
pub async fn finish_or_cut<F>(
    connection: F,
    served: Arc<AtomicBool>,
    deadline: Duration,
    peer: SocketAddr,
) where
    F: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let cut = async {
        tokio::time::sleep(deadline).await;
        if served.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = cut => tracing::debug!(%peer, "no request head in time; connection closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[tokio::test]
    async fn a_silent_connection_is_cut_at_the_deadline() {
        let served = Arc::new(AtomicBool::new(false));
        let started = std::time::Instant::now();
        finish_or_cut(
            std::future::pending(),
            served,
            Duration::from_millis(50),
            peer(),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_connection_that_was_served_runs_to_its_end() {
        let served = Arc::new(AtomicBool::new(true));
        let started = std::time::Instant::now();
        let connection = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        };
        finish_or_cut(connection, served, Duration::from_millis(20), peer()).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
