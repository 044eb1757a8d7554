//! Bounded polling.

use std::thread::sleep;
use std::time::{Duration, Instant};

/// One observation while polling: done with a value, or not yet (and what
/// was seen, for the timeout message).
pub enum Poll<T> {
    Ready(T),
    Pending(String),
}

/// Calls `check` every `interval` until it is [`Poll::Ready`], fails, or
/// `timeout` passes. The timeout error names `what` and the last
/// observation.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> anyhow::Result<Poll<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        match check()? {
            Poll::Ready(value) => return Ok(value),
            Poll::Pending(seen) => {
                if start.elapsed() >= timeout {
                    anyhow::bail!(
                        "timed out after {:.0?} waiting for {what}; last seen: {seen}",
                        start.elapsed()
                    );
                }
            }
        }
        sleep(interval);
    }
}
