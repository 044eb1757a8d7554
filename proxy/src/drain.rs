//! Graceful shutdown. On SIGTERM (or `POST /shutdown`) the listeners stop
//! accepting (new connections are refused), HTTP/1.1 connections close
//! after their request in flight, HTTP/2 connections get GOAWAY and keep
//! their open streams, and upgraded connections (WebSocket) carry on; the
//! process exits when all of them are done or `drainTimeoutSeconds` has
//! passed, whichever comes first.

use tokio::sync::watch;

/// The shutdown signal: cheap to clone, set once.
#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            tx: watch::channel(false).0,
        }
    }

    /// Starts the drain (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes once the drain has started.
    pub async fn triggered(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in self, so this cannot fail while we wait.
        let _ = rx.wait_for(|t| *t).await;
    }
}

/// Counts tasks that outlive their HTTP connection (upgraded tunnels), so
/// the drain can wait for them.
#[derive(Clone)]
pub struct Tracker {
    count: watch::Sender<usize>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

/// Held by a tracked task; dropping it marks the task done.
pub struct Token {
    count: watch::Sender<usize>,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.count.send_modify(|c| *c = c.saturating_sub(1));
    }
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            count: watch::channel(0).0,
        }
    }

    pub fn token(&self) -> Token {
        self.count.send_modify(|c| *c += 1);
        Token {
            count: self.count.clone(),
        }
    }

    pub fn active(&self) -> usize {
        *self.count.borrow()
    }

    /// Completes when no task holds a token.
    pub async fn idle(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|c| *c == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracker_waits_for_tokens() {
        let tracker = Tracker::new();
        let token = tracker.token();
        assert_eq!(tracker.active(), 1);
        let t = tracker.clone();
        let waiter = tokio::spawn(async move { t.idle().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(token);
        waiter.await.unwrap();

        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let waiter = tokio::spawn(async move { s.triggered().await });
        shutdown.trigger();
        waiter.await.unwrap();
        assert!(shutdown.is_triggered());
    }
}
